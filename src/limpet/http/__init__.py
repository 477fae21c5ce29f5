"""The wire: the aiohttp transport (retries, admission), SSE decoding, chunk assembly and
replay.

Internal: not public API."""
