from kfp import dsl
from kfp.dsl import Dataset, Markdown, Output

from components.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def ingest(
    source: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    min_side: int,
    shard_size: int,
    manifest: Output[Dataset],
    report: Output[Markdown],
    quarantine: Output[Dataset],
) -> list:
    """List, validate, de-duplicate and split the source images; returns the shard numbers."""
    from pathlib import Path

    from clazzify.core.imaging import ImageLimits
    from clazzify.training.ingest import IngestConfig, ingest_images

    cfg = IngestConfig(
        val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, limits=ImageLimits(min_side=min_side),
        shard_size=shard_size,
    )
    result = ingest_images(source, Path(manifest.path), Path(quarantine.path), cfg, progress=False)
    Path(report.path).write_text(result.to_markdown())
    manifest.metadata.update({"accepted": result.accepted, "class_names": result.class_names})
    quarantine.metadata.update({"quarantined": result.quarantined, "duplicates": result.duplicates_removed})
    manifest.metadata["shard_sizes"] = result.shard_sizes
    return result.shards
