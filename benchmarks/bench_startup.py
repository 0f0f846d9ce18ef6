"""Driver start-up at Stereo4D scale: everything `run_pipeline` does before the dataset starts
(`s4d_ray.engine.pipeline.plan_run`: list the input npz and the rectified videos, read which
clips are complete, build the clip rows), old approach vs new, on local disk and on the GCS
emulator.

    old: list folders with a stat per entry, open every Parquet shard one by one for its `name`
         column, `exists` per clip for `--rectified`
    new: one listing per folder, the shards' `name` column read as pyarrow datasets (1,000
         shards each), the rectified folder listed once and looked up in a set

The layout is the real one: input names `<video_id>_<µs>.npz` (empty files: start-up only lists
them), an output folder with `npz/` and `parquet/` where the shards are real Parquet files with
the writer's schema, compression and row groups (one template table from `clips_to_table`, the
`name`/`video_id` columns replaced per shard; its clips are tiny where a real shard is MBs, but
start-up reads only a shard's footer and name column either way), and a `--rectified` folder
half in the reference's `<id>/<id>-{left,right}_rectified.mp4` layout, half flat. Two
scenarios: `resume` (most clips complete, spread over the shards) and `fresh` (nothing
complete, every clip looked up).

Each measurement runs in a fresh Python subprocess: wall and CPU seconds (user + sys, all
threads; steadier than wall time on a shared machine) of `plan_run` (imports excluded), the RSS
before it, the RSS high-water mark during it (sampled every 5 ms) and the process's
peak RSS (`ru_maxrss`, imports included).

    python -m benchmarks.bench_startup                      # 110,000 clips / 14,000 shards local,
                                                            # 2,000 / 250 on the GCS emulator
    python -m benchmarks.bench_startup --clips 20000 --shards 2500 --gcs-clips 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPLETE_FRACTION = 105 / 110  # resume scenario: clips already complete


def clip_ids(num: int) -> list[str]:
    """Release-like clip ids: ~6 clips per video, `<11-char video id>_<µs timestamp>`."""
    return [f"v{i // 6:010d}_{1_000_000 * (i % 6) + 33_367:d}" for i in range(num)]


# ---------------------------------------------------------------- fixtures


def _template_table():
    """A shard of 8 tiny clips as the writer builds it (schema, metadata, column types)."""
    import numpy as np

    from s4d_ray.io.writer import build_clip_record, clips_to_table

    pose = np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1)
    records = [
        build_clip_record(
            name=f"tmpl_{i}",
            video_id="tmpl",
            timestamps=np.arange(4) * 33_367,
            camera2world=np.stack([pose] * 4),
            rectified2rig=np.stack([np.eye(3)] * 2),
            fov_bounds=np.array([-90.0, 90.0, -90.0, 90.0]),
            tracks=np.ones((3, 4, 3)),
            track_mask=np.ones((3, 4), bool),
            visibility=np.ones((3, 4), bool),
            colours=np.zeros((3, 3), np.uint8),
            motion=np.zeros((3, 4)),
            stage_timings={"decode": 0.1, "stereo": 1.0},
            metadata={"backend": "neural"},
        )
        for i in range(8)
    ]
    return clips_to_table(records)


def shard_bytes(template, names: list[str]) -> bytes:
    """One Parquet shard of `names` written as `write_parquet_shard` writes it."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = template.slice(0, len(names))
    table = table.set_column(
        table.schema.get_field_index("name"), "name", pa.array(names, pa.string())
    )
    table = table.set_column(
        table.schema.get_field_index("video_id"),
        "video_id",
        pa.array([n.rsplit("_", 1)[0] for n in names], pa.string()),
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=8)
    return buf.getvalue()


def layout(num_clips: int, num_shards: int, complete: bool) -> dict[str, bytes]:
    """Relative path -> content of the whole fixture of one scenario."""
    from s4d_ray.io.writer import shard_name

    ids = clip_ids(num_clips)
    files: dict[str, bytes] = {f"npz/{c}.npz": b"" for c in ids}
    for i, c in enumerate(ids):
        if i % 2:
            files[f"rectified/{c}-left_rectified.mp4"] = b""
            files[f"rectified/{c}-right_rectified.mp4"] = b""
        else:
            files[f"rectified/{c}/{c}-left_rectified.mp4"] = b""
            files[f"rectified/{c}/{c}-right_rectified.mp4"] = b""
    if complete:
        done = ids[: int(num_clips * COMPLETE_FRACTION)]
        template = _template_table()
        for s in range(num_shards):
            names = done[s * len(done) // num_shards : (s + 1) * len(done) // num_shards]
            files[f"out/parquet/{shard_name(names)}.parquet"] = shard_bytes(template, names)
        files.update({f"out/npz/{c}.npz": b"" for c in done})
    return files


def write_local(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        try:
            path.write_bytes(data)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    (root / "out").mkdir(exist_ok=True)


def write_gcs(data_dir: Path, bucket: str, files: dict[str, bytes]) -> None:
    """The fixture as the emulator's on-disk store (disk mode, `STORAGE_BASE`), written directly.

    Uploading through the emulator costs O(objects) per upload (it rewrites its whole `.meta`
    index each time: 6,000 objects would take ~25 min), so one object is uploaded for real to
    get the emulator's object resource, which is then cloned per object with its own name,
    size, MD5 and CRC32C, and the contents are written where the emulator keeps them.
    """
    import base64
    import hashlib as hl

    import google_crc32c

    from s4d_ray.io import fs

    proc, host = start_emulator(data_dir)
    try:
        os.environ["STORAGE_EMULATOR_HOST"] = host
        gcs, _ = fs.filesystem(f"gs://{bucket}")
        gcs.mkdir(bucket)
        gcs.pipe_file(f"{bucket}/template", b"")
    finally:
        proc.terminate()
        proc.wait(10)
    store = data_dir / ".cloudstorage"
    meta = json.loads((store / ".meta").read_text())
    template = meta["objects"][bucket].pop("template")
    generation = int(template["generation"])
    for i, (rel, data) in enumerate(files.items()):
        obj = {
            k: v.replace("/o/template", f"/o/{rel}") if isinstance(v, str) else v
            for k, v in template.items()
        }
        md5 = base64.b64encode(hl.md5(data).digest()).decode()
        obj.update(
            name=rel,
            id=f"{bucket}/{rel}/{generation + i}",
            generation=str(generation + i),
            size=str(len(data)),
            md5Hash=md5,
            etag=md5,
            crc32c=base64.b64encode(google_crc32c.Checksum(data).digest()).decode(),
        )
        obj["mediaLink"] = obj["mediaLink"].replace(template["generation"], str(generation + i))
        meta["objects"][bucket][rel] = obj
    (store / ".meta").write_text(json.dumps(meta))
    write_local(store / bucket, files)
    (store / bucket / "template").unlink(missing_ok=True)


# ---------------------------------------------------------------- the old approach (for the figure)


def old_list_files(uri: str, suffix: str) -> list[str]:
    """The listing before: `ls`, then `isdir` per entry."""
    from s4d_ray.io import fs

    filesystem, path = fs.filesystem(uri)
    if not filesystem.isdir(path):
        return []
    paths = [p for p in filesystem.ls(path, detail=False) if not filesystem.isdir(p)]
    if not fs.is_local(uri):
        paths = [filesystem.unstrip_protocol(p) for p in paths]
    return [p for p in sorted(paths) if p.endswith(suffix)]


def old_plan(npz: str, output: str, rectified: str) -> tuple[list[dict], set[str]]:
    """The start-up before: every shard opened one by one, `exists` per rectified clip."""
    import pyarrow.parquet as pq

    from s4d_ray.engine.rows import clip_spec
    from s4d_ray.io import fs
    from s4d_ray.io.clip_io import npz_stem
    from s4d_ray.io.ids import validate_clip_id
    from s4d_ray.io.rectify import find_rectified_videos

    in_npz = {npz_stem(u) for u in old_list_files(fs.join(output, "npz"), ".npz")}
    in_shards: set[str] = set()
    for uri in old_list_files(fs.join(output, "parquet"), ".parquet"):
        filesystem, path = fs.filesystem(uri)
        with filesystem.open(path, "rb") as f:
            in_shards.update(pq.read_table(f, columns=["name"]).column("name").to_pylist())
    completed = in_npz & in_shards
    rows = []
    for uri in old_list_files(npz, ".npz"):
        clip_id = validate_clip_id(npz_stem(uri))
        if clip_id not in completed:
            rows.append(
                clip_spec(clip_id, uri, rectified=find_rectified_videos(rectified, clip_id))
            )
    return rows, completed


def measure(approach: str, root: str) -> dict:
    """In this (fresh) process: seconds and peak RSS of one start-up."""
    import psutil

    t0 = time.perf_counter()
    from s4d_ray.engine.pipeline import plan_run
    from s4d_ray.io import fs

    import_s = time.perf_counter() - t0
    rss_after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    npz, output, rectified = (fs.join(root, p) for p in ("npz", "out", "rectified"))
    process = psutil.Process()
    rss_before = peak_rss = process.memory_info().rss
    done = threading.Event()

    def sample() -> None:  # the high-water mark during the start-up itself
        nonlocal peak_rss
        while not done.wait(0.005):
            peak_rss = max(peak_rss, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start, cpu_start = time.perf_counter(), time.process_time()
    if approach == "old":
        rows, completed = old_plan(npz, output, rectified)
    else:
        plan = plan_run(npz, output, rectified=rectified)
        rows, completed = plan.rows, plan.completed
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    done.set()
    sampler.join()
    peak_rss = max(peak_rss, process.memory_info().rss)
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_after_imports_mib": round(rss_after_imports),
        "rss_before_mib": round(rss_before / 2**20),
        "startup_peak_rss_mib": round(peak_rss / 2**20),
        "import_seconds": round(import_s, 2),
        "rows": len(rows),
        "rows_digest": digest,
        "completed": len(completed),
    }


def run_child(approach: str, root: str, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_startup", "--measure", approach, "--root", root],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"{approach} start-up failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- driver


def start_emulator(data_dir: Path | None = None) -> tuple[subprocess.Popen, str]:
    """`gcp-storage-emulator` on loopback: in memory, or on the store under `data_dir`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "gcp-storage-emulator"
    command = [str(exe), "start", "--host", "127.0.0.1", "--port", str(port), "-q"]
    env = dict(os.environ)
    if data_dir is None:
        command.append("--in-memory")
    else:
        env["STORAGE_BASE"] = str(data_dir)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("gcp-storage-emulator did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=110_000, help="input npz names (local)")
    parser.add_argument("--shards", type=int, default=14_000, help="Parquet shards (local)")
    parser.add_argument("--gcs-clips", type=int, default=2_000, help="0: skip the emulator")
    parser.add_argument("--gcs-shards", type=int, default=250)
    parser.add_argument("--scenarios", default="resume,fresh")
    parser.add_argument("--skip-old", action="store_true", help="only the new approach")
    parser.add_argument("--workdir", default="", help="where the local fixture goes (kept)")
    parser.add_argument("--measure", choices=["old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.root)))
        return

    env = dict(os.environ, GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    scenarios = args.scenarios.split(",")
    approaches = ["new"] if args.skip_old else ["old", "new"]
    results = []
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="s4d-bench-startup-"))
    try:
        for scenario in scenarios:
            root = workdir / f"local-{scenario}-{args.clips}-{args.shards}"
            if not (root / ".complete").exists():
                shutil.rmtree(root, ignore_errors=True)
                t0 = time.perf_counter()
                write_local(root, layout(args.clips, args.shards, scenario == "resume"))
                (root / ".complete").write_text("")
                print(f"fixture {root}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            for approach in approaches:
                r = run_child(approach, str(root), env)
                results.append(("local", scenario, args.clips, args.shards, approach, r))
                print(results[-1], file=sys.stderr)
        if args.gcs_clips:
            for scenario in scenarios:
                data_dir = workdir / f"gcs-{scenario}-{args.gcs_clips}-{args.gcs_shards}"
                bucket = f"bench-startup-{scenario}"
                t0 = time.perf_counter()
                shutil.rmtree(data_dir, ignore_errors=True)
                files = layout(args.gcs_clips, args.gcs_shards, scenario == "resume")
                write_gcs(data_dir, bucket, files)
                print(f"fixture gs://{bucket}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
                proc, host = start_emulator(data_dir)
                try:
                    gcs_env = dict(env, STORAGE_EMULATOR_HOST=host)
                    for approach in approaches:
                        r = run_child(approach, f"gs://{bucket}", gcs_env)
                        results.append(
                            ("gcs-emulator", scenario, args.gcs_clips, args.gcs_shards, approach, r)
                        )
                        print(results[-1], file=sys.stderr)
                finally:
                    proc.terminate()
                    proc.wait(10)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nstart-up before the dataset starts (plan_run), {os.cpu_count()} CPUs")
    header = (
        f"{'where':<13} {'scenario':<8} {'clips':>7} {'shards':>6} {'approach':<8} "
        f"{'wall s':>7} {'CPU s':>6} {'RSS before':>10} {'peak during':>11} {'process peak':>12} "
        f"{'rows':>7} {'complete':>8}"
    )
    print(header)
    print("-" * len(header))
    for where, scenario, clips, shards, approach, r in results:
        print(
            f"{where:<13} {scenario:<8} {clips:>7} {shards if scenario == 'resume' else 0:>6} "
            f"{approach:<8} {r['seconds']:>7.2f} {r['cpu_seconds']:>6.2f} {r['rss_before_mib']:>10} "
            f"{r['startup_peak_rss_mib']:>11} {r['peak_rss_mib']:>12} {r['rows']:>7} "
            f"{r['completed']:>8}"
        )
    by_key = {(w, s, a): r for w, s, _, _, a, r in results}
    for where, scenario in dict.fromkeys((w, s) for w, s, *_ in results):
        old, new = by_key.get((where, scenario, "old")), by_key.get((where, scenario, "new"))
        if old and new:
            if old["rows_digest"] != new["rows_digest"] or old["completed"] != new["completed"]:
                raise SystemExit(f"{where} {scenario}: old and new plans differ: {old} vs {new}")
            print(
                f"{where} {scenario}: same rows; new/old wall "
                f"{new['seconds'] / max(old['seconds'], 1e-3):.2f}, CPU "
                f"{new['cpu_seconds'] / max(old['cpu_seconds'], 1e-3):.2f}"
            )


if __name__ == "__main__":
    main()
