"""python -m dativo"""

from dativo._entry import command

command()
