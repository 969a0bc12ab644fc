"""Raw-format adapters. Each returns a :class:`~gensr.data.canonical.RawLog` and a report."""
