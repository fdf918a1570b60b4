"""Job runners: ``puzzle worker`` claims queued jobs from the job store and runs them (Ray for pipeline stages)."""
