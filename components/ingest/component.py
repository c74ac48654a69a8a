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
    labels_from: str,
    relabel_csv: str,
    mlflow_tracking_uri: str,
    model_name: str,
    image_size: int,
    pixel_cache: bool,
    manifest: Output[Dataset],
    report: Output[Markdown],
    quarantine: Output[Dataset],
    pixels: Output[Dataset],
) -> list:
    """List, validate, de-duplicate and split the source images; returns the shard numbers.

    With ``pixel_cache`` it also keeps each photo's training pixels at ``image_size`` from the
    decode that validates it, one file per shard in ``pixels``; ``pixels/cache.json`` says
    what the folder holds either way.
    """
    import json
    from pathlib import Path

    from clazzify.core.imaging import ImageLimits
    from clazzify.scoring.labels import read_manual_labels
    from clazzify.training.ingest import IngestConfig, ingest_images, prepare_ingest

    cfg = IngestConfig(
        val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, limits=ImageLimits(min_side=min_side),
        shard_size=shard_size,
    )
    setup = prepare_ingest(labels_from=labels_from, relabel_csv=relabel_csv, read_manual_labels=read_manual_labels,
                           champion_model=model_name, tracking_uri=mlflow_tracking_uri)
    cache = {"pixel_cache": Path(pixels.path), "pixel_size": image_size} if pixel_cache else {}
    result = ingest_images(source, Path(manifest.path), Path(quarantine.path), cfg, progress=False,
                           label_overrides=setup.label_overrides, champion_data=setup.champion_data, **cache)
    Path(pixels.path).mkdir(parents=True, exist_ok=True)
    described = {"image_size": image_size, "shards": result.shards if pixel_cache else []}
    (Path(pixels.path) / "cache.json").write_text(json.dumps(described))
    pixels.metadata.update(described)
    Path(report.path).write_text(result.to_markdown())
    manifest.metadata.update({"accepted": result.accepted, "class_names": result.class_names})
    quarantine.metadata.update({"quarantined": result.quarantined, "duplicates": result.duplicates_removed})
    manifest.metadata["shard_sizes"] = result.shard_sizes
    manifest.metadata.update({"ingested_at": result.ingested_at, "source": source,
                              "new_since_champion": result.new_since_champion,
                              "label_overrides": result.label_overrides})
    return result.shards
