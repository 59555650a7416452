"""Monitoring: drift reports, resource and business metrics, alerts, and the live console.

The console (``mlsuite serve console``) is a service beside the two apps: it reads their
``/metrics`` and model endpoints over HTTP and the streams, registry, experiments and
rollouts from Redis; it never imports an app.
"""
