"""Subset tool at COCO scale: wall time and peak memory, streaming tool vs. plain json.load + pycocotools.

Generates a fake ``instances_train2017.json`` of COCO's size (118,287 images, ~860k annotations, 80
categories, ~450 MB, person-heavy category mix, 1% crowd RLE) under a temporary folder, with 1-byte
placeholder files for the images the subset keeps (the tool never decodes images), then runs in fresh
subprocesses, interleaved:

* ``stream``: ``fnoise_maskrcnn.data.subsetting.make_subset(..., categories=["bus"], split=80/10/10)``;
* ``plain``: the usual approach, ``pycocotools.COCO(ann_file)`` then selecting the bus images and
  annotations and writing them (no splits), i.e. what a script built on ``json.load`` costs.

Prints JSON with the medians and the ratio. The generated files are deleted at the end.

    python benchmarks/bench_subset.py [--repeats 2] [--tmp-dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import write_result

NUM_IMAGES = 118_287
NUM_ANNOTATIONS = 860_001
CATEGORY = "bus"

# (imports, work): peak RSS is also read after the imports, since importing the package (torch,
# torchvision) alone costs several hundred MB that have nothing to do with the annotation file.
_CHILD = {
    "stream": (
        "from fnoise_maskrcnn.data.subsetting import make_subset",
        """
split = {"train": 0.8, "val": 0.1, "test": 0.1}
result = make_subset(ANN, IMAGES, OUT, categories=["bus"], split=split, seed=0)
kept = sum(result.images.values())
""",
    ),
    "plain": (
        "import contextlib, io, json\nfrom pycocotools.coco import COCO",
        """
with contextlib.redirect_stdout(io.StringIO()):
    coco = COCO(ANN)
cat_ids = coco.getCatIds(catNms=["bus"])
img_ids = sorted(set(coco.getImgIds(catIds=cat_ids)))
anns = coco.loadAnns(coco.getAnnIds(imgIds=img_ids, catIds=cat_ids, iscrowd=None))
with open(OUT + "/all.json", "w") as f:
    images, categories = coco.loadImgs(img_ids), coco.loadCats(cat_ids)
    json.dump({"images": images, "annotations": anns, "categories": categories}, f)
kept = len(img_ids)
""",
    ),
}

_CHILD_WRAPPER = """
import json, resource, sys, time
ANN, IMAGES, OUT = sys.argv[1:4]
{imports}
import_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
{work}
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": seconds, "peak_rss_mb": peak, "rss_after_imports_mb": import_rss,
                  "peak_above_imports_mb": peak - import_rss, "kept_images": kept}}))
"""


def category_weights(rng: random.Random) -> list[float]:
    """80 categories: person ~30% of annotations, a long tail; bus ~0.7% (as in train2017)."""
    tail = sorted((rng.paretovariate(1.2) for _ in range(78)), reverse=True)
    tail = [t / sum(tail) * 0.693 for t in tail]
    return [0.30, 0.007] + tail


def _coco_category_ids() -> list[int]:
    """COCO's 80 category ids: 1..90 less the 10 it never uses."""
    unused = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    return [i for i in range(1, 91) if i not in unused]


def _fake_image(i: int) -> dict:
    """Image entry ``i`` (1-based), with train2017's fields and a 640x480 size."""
    return {
        "license": 1,
        "file_name": f"{i:012d}.jpg",
        "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg",
        "height": 480,
        "width": 640,
        "date_captured": "2013-11-14 11:18:45",
        "id": i,
    }


def _fake_annotation(rng: random.Random, a: int, category_ids: list[int], weights: list[float]) -> dict:
    """Annotation ``a``: a random image and category, a box, and a polygon (or, 1% of the time, crowd RLE)."""
    image_id = rng.randint(1, NUM_IMAGES)
    category = rng.choices(category_ids, weights)[0]
    x, y, w, h = rng.uniform(0, 500), rng.uniform(0, 380), rng.uniform(5, 140), rng.uniform(5, 100)
    crowd = rng.random() < 0.01
    if crowd:
        counts = [rng.randint(1, 400) for _ in range(rng.randint(100, 400))]
        segmentation = {"counts": counts + [480 * 640 - sum(counts)], "size": [480, 640]}
    else:
        n = rng.randint(8, 40)
        segmentation = [
            [round(v, 2) for _ in range(n) for v in (x + rng.uniform(0, w), y + rng.uniform(0, h))]
        ]
    return {
        "segmentation": segmentation,
        "area": round(w * h * 0.6, 4),
        "iscrowd": int(crowd),
        "image_id": image_id,
        "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
        "category_id": category,
        "id": a,
    }


def write_fake_coco(path: Path, seed: int = 0) -> set[int]:
    """Write the fake file element by element; return the image ids that have a bus annotation."""
    rng = random.Random(seed)
    weights = category_weights(rng)
    category_ids = _coco_category_ids()
    names = ["person", CATEGORY] + [f"category_{i}" for i in range(78)]
    bus_images: set[int] = set()
    with open(path, "w") as f:
        f.write('{"info": {"description": "fake COCO-scale file"}, "licenses": [], "images": [')
        for i in range(1, NUM_IMAGES + 1):
            f.write(("," if i > 1 else "") + json.dumps(_fake_image(i)))
        f.write('], "annotations": [')
        for a in range(1, NUM_ANNOTATIONS + 1):
            annotation = _fake_annotation(rng, a, category_ids, weights)
            f.write(("," if a > 1 else "") + json.dumps(annotation))
            if annotation["category_id"] == category_ids[1]:
                bus_images.add(annotation["image_id"])
        f.write('], "categories": ')
        f.write(
            json.dumps([{"supercategory": "thing", "id": c, "name": n} for c, n in zip(category_ids, names)])
        )
        f.write("}")
    return bus_images


def run_child(kind: str, ann: Path, images: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    imports, work = _CHILD[kind]
    code = _CHILD_WRAPPER.format(imports=imports, work=work)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(ann), str(images), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    shutil.rmtree(out)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tmp-dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.tmp_dir, prefix="bench_subset_"))
    try:
        ann = work / "instances_train2017.json"
        start = time.perf_counter()
        bus_images = write_fake_coco(ann)
        generate_seconds = time.perf_counter() - start
        images = work / "train2017"
        images.mkdir()
        for image_id in bus_images:
            (images / f"{image_id:012d}.jpg").write_bytes(b"\xff")
        runs: dict[str, list[dict]] = {"stream": [], "plain": []}
        for _ in range(args.repeats):
            for kind in runs:
                runs[kind].append(run_child(kind, ann, images, work / f"out_{kind}"))
        summary = {
            kind: {
                "seconds_median": statistics.median(r["seconds"] for r in rs),
                "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in rs),
                "peak_above_imports_mb_median": statistics.median(r["peak_above_imports_mb"] for r in rs),
                "kept_images": rs[0]["kept_images"],
                "runs": rs,
            }
            for kind, rs in runs.items()
        }
        stream, plain = summary["stream"], summary["plain"]
        result = {
            "file_mb": round(ann.stat().st_size / 2**20, 1),
            "images": NUM_IMAGES,
            "annotations": NUM_ANNOTATIONS,
            "generate_seconds": round(generate_seconds, 1),
            **summary,
            "time_ratio_stream_over_plain": stream["seconds_median"] / plain["seconds_median"],
            "memory_ratio_stream_over_plain": stream["peak_rss_mb_median"] / plain["peak_rss_mb_median"],
            "memory_above_imports_ratio_stream_over_plain": stream["peak_above_imports_mb_median"]
            / plain["peak_above_imports_mb_median"],
        }
        print(json.dumps(result, indent=1))
        print(f"wrote {write_result('subset', result)}")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
