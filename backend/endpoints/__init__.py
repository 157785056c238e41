"""The endpoint inventory over HTTP (``/api/v1/endpoints``, the ``/endpoints`` page), its gauges, and
``flowscope endpoints check`` (:mod:`.check`)."""
