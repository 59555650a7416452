"""``python -m mlplatform`` is the ``mlsuite`` command."""

from mlplatform.cli import main

main()
