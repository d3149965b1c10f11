"""``python -m modelplex._replica``: how the local backend starts a replica process."""

from .process import main

main()
