"""python -m dativo"""

from dativo.cli import main

main()
