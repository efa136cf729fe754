"""Journal/storage consistency: the checks behind `panaversity-fs fsck`."""
