"""Container image names: the one place the pipeline, the Makefile and the
manifests take them from (the Makefile reads these lines with grep)."""

REGISTRY = "ghcr.io/clazzify"
TAG = "0.1.0"
PIPELINE_IMAGE = f"{REGISTRY}/clazzify-pipeline:{TAG}"
PIPELINE_GPU_IMAGE = f"{REGISTRY}/clazzify-pipeline-gpu:{TAG}"
SERVING_IMAGE = f"{REGISTRY}/clazzify-serving:{TAG}"
MLFLOW_IMAGE = f"{REGISTRY}/clazzify-mlflow:{TAG}"
