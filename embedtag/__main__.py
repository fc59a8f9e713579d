from embedtag.cli import main

main()
