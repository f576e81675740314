"""Target `arm-tflite`."""
