"""The <tool_call> text form both ways; malformed model output raises ToolCallError, nothing else."""

import pytest

from MedSAMAgentLib.actions import Box, Point, Stop
from MedSAMAgentLib.geometry import Letterbox
from MedSAMAgentLib.toolcall import ToolCallError, format_tool_call, parse_model_action, parse_tool_call

SQUARE = Letterbox(1000, 1000)  # model coordinates equal pixels


def test_valid_calls():
    assert parse_model_action('<tool_call>{"name": "add_bbox", "arguments": {"bbox_2d": [10, 20, 300, 400]}}'
                              "</tool_call>") == Box(10, 20, 300, 400)
    text = ('I will refine.\n<tool_call>\n{"name": "add_point", "arguments": {"point_2d": [5, 999], '
            '"point_type": "negative"}}\n</tool_call>')
    assert parse_model_action(text) == Point(5, 999, False)
    assert parse_model_action('<tool_call>{"name": "stop_action", "arguments": {}}</tool_call>') == Stop()


def test_only_the_first_call_counts_and_values_are_clamped():
    text = ('<tool_call>{"name": "add_point", "arguments": {"point_2d": [1200, -3.4], "point_type": "positive"}}'
            '</tool_call><tool_call>{"name": "stop_action", "arguments": {}}</tool_call>')
    assert parse_model_action(text) == Point(999, 0, True)


def test_box_corners_are_sorted_and_arguments_may_be_a_json_string():
    text = '<tool_call>{"name": "add_bbox", "arguments": "{\\"bbox_2d\\": [300, 400, 10, 20]}"}</tool_call>'
    assert parse_model_action(text) == Box(10, 20, 300, 400)


@pytest.mark.parametrize(
    "text, positive",
    [
        ('<tool_call>{"name": "add_positive_point", "arguments": {"point_2d": [12, 34]}}</tool_call>', True),
        ('<tool_call>{"name": "add_negative_point", "arguments": {"x": 12, "y": 34}}</tool_call>', False),
        ("<tool_call>add_positive_point{12, 34}</tool_call>", True),
        ("add_negative_point{x: 12, y: 34}", False),
        ("add_positive_point(12,34)", True),
    ],
)
def test_legacy_point_forms(text, positive):
    assert parse_model_action(text) == Point(12, 34, positive)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("I think the mask looks good.", "no <tool_call>"),
        ("<tool_call>{not json}</tool_call>", "not valid JSON"),
        ("<tool_call>[1, 2, 3]</tool_call>", "JSON object"),
        ('<tool_call>{"name": "add_bbox", "arguments": {"bbox_2d": [1, 2, 3]}}</tool_call>', "list of 4"),
        ('<tool_call>{"name": "add_bbox", "arguments": {"bbox_2d": "1,2,3,4"}}</tool_call>', "list of 4"),
        ('<tool_call>{"name": "add_bbox", "arguments": {"bbox_2d": [1, 2, "a", 4]}}</tool_call>', "non-number"),
        ('<tool_call>{"name": "add_bbox", "arguments": {"bbox_2d": [1, 2, NaN, 4]}}</tool_call>', "non-finite"),
        ('<tool_call>{"name": "add_point", "arguments": {"point_2d": [1, 2]}}</tool_call>', "point_type"),
        ('<tool_call>{"name": "add_point", "arguments": {"point_2d": [1, 2], "point_type": "pos"}}</tool_call>',
         "point_type"),
        ('<tool_call>{"name": "segment", "arguments": {}}</tool_call>', "unknown tool"),
        ('<tool_call>{"name": "add_point", "arguments": [1, 2]}</tool_call>', "must be an object"),
        ('<tool_call>{"name": "add_bbox", "arguments": "{bad"}</tool_call>', "not valid JSON"),
        ("<tool_call>", "not valid JSON"),
        ("add_positive_point{12}", "list of 2"),
    ],
)
def test_malformed_output_raises_a_specific_error(text, fragment):
    with pytest.raises(ToolCallError, match=fragment.replace("[", r"\[")):
        parse_model_action(text)


def test_non_text_is_rejected_cleanly():
    with pytest.raises(ToolCallError):
        parse_model_action(None)


@pytest.mark.parametrize("shape", [(1000, 1000), (181, 258), (512, 256)])
def test_format_then_parse_round_trips_in_pixels(shape):
    lb = Letterbox(*shape)
    h, w = shape
    for action in (Box(3, 5, w - 4, h - 2), Point(w // 3, h - 1, True), Point(0, 0, False), Stop()):
        text = format_tool_call(action, lb)
        assert text.startswith("<tool_call>\n{") and text.endswith("}\n</tool_call>")
        back = parse_tool_call(text, lb)
        assert type(back) is type(action)
        if isinstance(action, Box):
            assert all(abs(a - b) <= 1 for a, b in zip(back.as_list(), action.as_list()))
        elif isinstance(action, Point):
            assert abs(back.x - action.x) <= 1 and abs(back.y - action.y) <= 1
            assert back.positive == action.positive
