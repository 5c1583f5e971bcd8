"""Long-tail segments on a hand-made split, with the counts worked out below."""
from indexing.dataset import Example
from indexing.segments import head_items, segment_masks, training_interactions

TRAIN = [Example(1, (5,), 6), Example(1, (5, 6), 7), Example(2, (6,), 7),
         Example(3, (7,), 8), Example(3, (7, 8), 7), Example(3, (7, 8, 7), 9)]


def test_training_interactions_count_targets_and_each_users_first_history():
    items, users = training_interactions(TRAIN)
    # 7: targets of users 1, 2, 3 and user 3's first history; 6: user 1's target and user 2's first history.
    assert dict(items) == {5: 1, 6: 2, 7: 4, 8: 1, 9: 1}
    assert dict(users) == {1: 3, 2: 2, 3: 4}


def test_head_is_the_most_popular_fifth_of_the_items_ties_by_id():
    items, _ = training_interactions(TRAIN)
    assert head_items(items) == {7}  # round(0.2 x 5 items) = 1
    assert head_items(items, share=0.4) == {7, 6}
    assert head_items(items, share=0.6) == {7, 6, 5}  # 5, 8 and 9 tie at one interaction: the lowest id


def test_segment_masks():
    evaluated = [Example(1, (5, 6, 7), 7), Example(2, (6, 7), 5), Example(3, (7, 8, 7, 9), 10), Example(4, (1,), 7)]
    masks = segment_masks(evaluated, TRAIN)
    # Median user activity 3: only user 3 (4) is long; user 4 has no training interactions: short.
    # Item 10 was never seen in training: tail.
    assert masks["head"].tolist() == [True, False, False, True]
    assert masks["tail"].tolist() == [False, True, True, False]
    assert masks["long"].tolist() == [False, False, True, False]
    assert masks["short"].tolist() == [True, True, False, True]
