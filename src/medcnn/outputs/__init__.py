"""What a click leaves behind: the files, written all or nothing, and the pictures."""
