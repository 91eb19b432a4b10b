from ckpt_tool.cli import main

main()
