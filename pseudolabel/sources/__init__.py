"""Sources of raw samples: procedural scenes, image folders, existing webdataset shards."""
