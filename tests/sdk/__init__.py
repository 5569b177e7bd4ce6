"""Tests of the client SDK and `slos-serve generate`, against a scripted test server."""
