"""Model monitoring: drift, calibration, change detection and prequential metrics."""
