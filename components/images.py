"""Container image names: the one place the pipeline, the Makefile and the
manifests take them from.

The Makefile asks this file (``python3 components/images.py NAME``), the
components import the constants, and ``python -m pipelines.train compile --registry``
moves every one of them to another registry with :func:`retarget`. Standard
library only, so the Makefile can run it without the project installed.
"""

import argparse
import sys

REGISTRY = "ghcr.io/clazzify"
TAG = "0.1.0"
PIPELINE_IMAGE = f"{REGISTRY}/clazzify-pipeline:{TAG}"
PIPELINE_GPU_IMAGE = f"{REGISTRY}/clazzify-pipeline-gpu:{TAG}"
SERVING_IMAGE = f"{REGISTRY}/clazzify-serving:{TAG}"
MLFLOW_IMAGE = f"{REGISTRY}/clazzify-mlflow:{TAG}"

# Short names (what `make` and the CLI below say) -> full reference.
IMAGES = {
    "pipeline": PIPELINE_IMAGE,
    "pipeline-gpu": PIPELINE_GPU_IMAGE,
    "serving": SERVING_IMAGE,
    "mlflow": MLFLOW_IMAGE,
}


def retarget(image: str, registry: str | None) -> str:
    """``image`` moved from :data:`REGISTRY` to ``registry`` (None or "" keeps it).

    Raises:
        ValueError: ``image`` is not one of this project's images, or the registry is malformed.
    """
    if not registry:
        return image
    registry = registry.rstrip("/")
    if "://" in registry or " " in registry:
        raise ValueError(
            f"registry {registry!r} is not a registry path: use host[:port]/namespace, "
            "e.g. registry.example.com/team"
        )
    prefix = f"{REGISTRY}/"
    if not image.startswith(prefix):
        raise ValueError(f"{image!r} is not a clazzify image (expected a name under {prefix})")
    return f"{registry}/{image.removeprefix(prefix)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Print a clazzify image reference (what `make images` builds and pushes)."
    )
    parser.add_argument(
        "name",
        nargs="?",
        choices=[*IMAGES, "tag", "registry"],
        help="image short name, or `tag` / `registry`; omit to list all",
    )
    parser.add_argument("--registry", default="", help="registry to move the image to")
    args = parser.parse_args(argv)
    try:
        if args.name is None:
            for name, image in IMAGES.items():
                print(f"{name}\t{retarget(image, args.registry)}")
        elif args.name == "tag":
            print(TAG)
        elif args.name == "registry":
            print((args.registry or REGISTRY).rstrip("/"))
        else:
            print(retarget(IMAGES[args.name], args.registry))
    except ValueError as e:
        print(f"images.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
