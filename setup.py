"""Package discovery only; all metadata is in pyproject.toml.

The trainer lives in the top-level folder ``train/`` (see DESIGN.md) but installs as
``archzoo.train``, so that installing archzoo never puts a package named ``train`` on sys.path.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["archzoo", "archzoo.*"])
packages += ["archzoo." + name for name in find_packages(include=["train", "train.*"])]
setup(packages=packages, package_dir={"archzoo.train": "train"}, package_data={"archzoo": ["py.typed"]})
