"""The playground page as package data: index.html, its style sheet and scripts (served by routers.playground)."""
