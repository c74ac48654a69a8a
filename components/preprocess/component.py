from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def preprocess(
    manifest: Input[Dataset],
    image_size: int,
    augment_copies: int,
    seed: int,
    min_side: int,
    shard: int,
    pixels: Input[Dataset],
    train_data: Output[Dataset],
):
    """Decode, resize and crop one shard's images into train/val/test HDF5 shard files; the
    photos whose pixels ingest kept (``pixels``) are copied instead of decoded."""
    import json
    from pathlib import Path

    from clazzify.core.imaging import ImageLimits
    from clazzify.training.preprocess import PreprocessConfig, build_hdf5

    cfg = PreprocessConfig(
        image_size=image_size, augment_copies=augment_copies, seed=seed, limits=ImageLimits(min_side=min_side)
    )
    paths = build_hdf5(Path(manifest.path), Path(train_data.path), cfg, shard=shard, progress=False,
                       pixel_cache=Path(pixels.path))
    summary = json.loads((Path(train_data.path) / f"summary-{shard:05d}.json").read_text())
    train_data.metadata.update({"splits": sorted(paths), "image_size": image_size, "shard": shard,
                                "from_pixel_cache": summary["from_pixel_cache"]})
