"""python -m dativo"""

from dativo._entry import main

main()
