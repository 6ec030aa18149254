from nano_gpt.cli import main

main()
