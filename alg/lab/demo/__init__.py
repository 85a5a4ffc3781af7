"""The lab's FTP clients, the cases they play (scenarios) and the demo that shows them."""
