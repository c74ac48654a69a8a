"""Thin KFP components: each maps Input/Output paths and scalars onto one call
of a step function in the ``clazzify`` package. Nothing is installed at run
time: every component runs in the project image (:data:`PIPELINE_IMAGE`)."""
