"""The ANS trust list: parse, import, refresh, and the DN ↔ domain decisions."""
