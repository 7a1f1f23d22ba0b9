"""A trained model back from its files, model -> maps and boxes (torch), and the map Parquet format (mapstore: no torch)."""
