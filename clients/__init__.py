"""Render clients and their assets: the browser viewer, the VMC bridge, the recorder."""
