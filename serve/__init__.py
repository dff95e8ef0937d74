"""Ray Serve applications: the summarization endpoint and the job-control API."""
