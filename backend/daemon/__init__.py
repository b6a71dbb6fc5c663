"""The service-domain daemon: a config's services, kept running and in step with the file."""
