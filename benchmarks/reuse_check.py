"""What the reuse check adds to a run, per image: the prepare task looking up earlier published images.

What runs
    ``--images`` published images (default 100) of ``--image-bytes`` each (default 4 MiB, a 2MP PNG's
    size; seeded random bytes, since the check reads and hashes them without decoding) are written to a
    temporary publish root with their index entries, as runs with ``reuse`` leave them. Then, in this
    process, the prepare task's own code is timed over the same requests:

    baseline  what prepare does for every run anyway: render and check the target and every file name
              (``planned_target``).
    miss      the reuse check when nothing was published before (a first run): each request's digest
              and one look for its index entry.
    hit       the reuse check when every image was published: digest, index entry, and the file read
              back and hashed (size and sha256 must match) - the worst case, and the usual one for an
              unchanged scheduled refresh.

    Each is the best of ``--passes`` passes (the machine may be shared: other load only adds time);
    the page cache is warm after the first pass, as it is for a target a run has just written.
    The ratio of each to the baseline is printed, measured in the same process.

Target: the hit check under 5 ms per image. The exit status is 1 when it is missed. The hit check's cost
grows with the file size (hashing dominates it): measure with your own images' size.

Run::

    .venv/bin/python benchmarks/reuse_check.py
    .venv/bin/python benchmarks/reuse_check.py --images 50 --image-bytes 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import ROOT

sys.path.insert(0, str(ROOT))

from flexflow.publishing.operators import PreparePublishOperator
from flexflow.publishing.paths import PlannedFile, planned_target
from flexflow.publishing.reuse import planned_digest, record_published

TARGET_MS = 5.0
SEED = 13


def requests(count: int) -> list[dict[str, object]]:
    flux = {"resolution": "2MP", "output_format": "png", "aspect_ratio": "1:1"}
    return [
        {"image": f"image{n}", "variant": "", "prompt": f"product shot number {n}", "flux": {**flux, "seed": n}}
        for n in range(count)
    ]


def publish(root: Path, jobs: list[dict[str, object]], size: int) -> None:
    """Each job's image in an earlier run's folder, indexed as a publish task with reuse indexes it."""
    rng = random.Random(SEED)
    folder = root / "run1"
    folder.mkdir(parents=True)
    for job in jobs:
        data = rng.randbytes(size)
        (folder / f"{job['image']}.png").write_bytes(data)
        record = {
            "file": f"file://{folder}/{job['image']}.png",
            "name": f"{job['image']}.png",
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": size,
            "job_id": f"job-{job['image']}",
            "index": 1,
            "job_images": 1,
        }
        record_published(f"file://{root}/", None, planned_digest(job), [record], "bench", "run1")


def best(passes: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(passes):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--image-bytes", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    logging.disable(logging.INFO)  # prepare logs a line per image into the task log; not this terminal
    jobs = requests(args.images)
    with tempfile.TemporaryDirectory(prefix="flexflow-reuse-bench-") as tmp:
        root = Path(tmp)
        to = f"file://{root}/{{{{ run_id }}}}"
        files = [PlannedFile(str(job["image"]), "", "png") for job in jobs]

        def check(publish_root: Path) -> Callable[[], object]:
            prepare = PreparePublishOperator(
                task_id="prepare",
                to=to,
                root=f"file://{publish_root}/",
                filename="{image}.{ext}",
                files=[],
                params_used=[],
                requests=jobs,
            )
            return lambda: prepare._reusable([planned_digest(job) for job in jobs])

        (root / "empty").mkdir()
        baseline = best(args.passes, lambda: planned_target(to, f"file://{root}/", "{image}.{ext}", files, {}))
        miss = best(args.passes, check(root / "empty"))
        publish(root / "published", jobs, args.image_bytes)
        found = check(root / "published")
        assert len(found()) == len(jobs), "every image is reusable"  # type: ignore[arg-type]
        hit = best(args.passes, found)

    per_image = {
        name: seconds * 1000 / len(jobs) for name, seconds in (("baseline", baseline), ("miss", miss), ("hit", hit))
    }
    print(f"{len(jobs)} images of {args.image_bytes} bytes, best of {args.passes} passes, per image:")
    for name, ms in per_image.items():
        print(f"  {name:<8} {ms:8.3f} ms   {ms / per_image['baseline']:8.1f} x baseline")
    verdict = "met" if per_image["hit"] < TARGET_MS else "MISSED"
    print(f"target: the hit check under {TARGET_MS} ms per image: {verdict}")
    return 0 if per_image["hit"] < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
