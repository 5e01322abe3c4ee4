"""Building blocks two papers share: the elastic-op contract of weight-sharing supernets."""
