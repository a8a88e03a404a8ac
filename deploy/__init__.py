"""Client side: deploy images into read-only btrfs /usr subvolumes."""
