"""Prediction: a trained model on new images, tiled, out of core, on a cluster, OpenVINO, export."""
