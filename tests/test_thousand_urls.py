"""1,000 URLs on a loopback server through the default recipe, two worker processes."""
import glob
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.demo.localweb import LocalWeb


@pytest.mark.slow
def test_thousand_urls_end_to_end(tmp_path):
    web_root = tmp_path / "web"
    web_root.mkdir()
    for i in range(250):
        # Noise, not flat colour: distinct pictures to the perceptual dedup stage too.
        size = (64 + i % 200, 48 + (i * 7) % 150)
        pixels = np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85)
        (web_root / f"{i}.jpg").write_bytes(out.getvalue())
    with LocalWeb(web_root) as web:
        rows = [
            {"url": web.url(f"{i % 250}.jpg" if i % 50 else f"missing/{i}.jpg"), "caption": f"A test picture, row {i}"}
            for i in range(1000)
        ]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
        out = tmp_path / "out"
        assert main([
            "run", "--recipe", "manifests/local-sample.yaml", "--input", str(tmp_path / "urls.parquet"),
            "--output", str(out), "--allow-private-network", "--set", "output.samples_per_shard=200",
        ]) == 0

    counts = json.loads((out / "report" / "audit.json").read_text())["counts"]
    rejected = counts["rejected_by_stage"]
    assert counts["input"] == 1000 == counts["kept"] + sum(sum(r.values()) for r in rejected.values())
    assert rejected["download"]["http_404"] == 20
    assert counts["kept"] == 250 - len({i % 250 for i in range(0, 1000, 50)} - {i % 250 for i in range(1000) if i % 50})

    import webdataset as wds

    tars = sorted(glob.glob(f"{out}/shards/*.tar"))
    assert sum(1 for _ in wds.WebDataset(tars, shardshuffle=False).decode("pil")) == counts["kept"]
