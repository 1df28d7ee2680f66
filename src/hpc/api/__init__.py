"""The HTTP face of the gateway: Connexion app factory, thin handlers, one error table."""
