"""The HTTP server's routes, one router per group; ``http.app.create_app`` includes them."""
