"""TracksTo4D in the engine: inputs from release clips, windowed inference, evaluation, training."""
