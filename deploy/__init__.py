"""lanser's deployment files (image, KubeRay manifests, Ray job specs); ``deploy.validate`` checks them.

A package only so that ``python -m deploy.validate`` and the tests import the validator by name.
It is not part of the lanser distribution (pyproject.toml packages labeler and trainer only).
"""
