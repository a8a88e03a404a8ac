"""Server side: compose images from package lists with libsolv and publish them."""
