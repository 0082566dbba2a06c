"""Read the quickstart's Iceberg table back: python examples/quickstart/read_back.py"""

from pathlib import Path

from pyiceberg.catalog import load_catalog

warehouse = Path(__file__).resolve().parent / "warehouse"
# The embedded catalog is PyIceberg's SQL catalog named "dativo" (the name scopes its tables).
catalog = load_catalog("dativo", type="sql", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri())
table = catalog.load_table("demo.orders")
orders = table.scan().to_arrow()
print(f"{orders.num_rows} rows in {len(table.snapshots())} snapshot(s)")
print(orders.group_by("country").aggregate([("amount", "sum"), ("order_id", "count")]).sort_by("country"))
