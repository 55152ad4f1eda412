"""For testing agents built on aiovirt against real parts: ``daemon.PrivateDaemon`` starts a
libvirtd of its own on private sockets (and, as root, private QEMU state);
``fakepeer`` scripts a misbehaving daemon for what a real one will not do."""
