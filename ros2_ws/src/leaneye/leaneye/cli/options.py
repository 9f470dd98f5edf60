"""Command-line options shared by several `leaneye` and `leaneye-compress` subcommands, each defined once."""


def add_detection_options(parser) -> None:
    parser.add_argument("--conf", type=float, default=0.25, help="score threshold")
    parser.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0 = the backend's default)")
