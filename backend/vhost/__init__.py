"""vhost-user back-end and front-end, guest memory, split virtqueues, and the devices on them."""
