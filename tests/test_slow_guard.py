"""`make test-fast` runs `-m "not slow"`: a test that starts a server without the mark fails at once."""

from __future__ import annotations

import pytest

from tests.server_process import require_slow_test


def test_a_test_not_marked_slow_may_not_start_a_server():
    with pytest.raises(pytest.fail.Exception, match="mark it @pytest.mark.slow"):
        require_slow_test()


@pytest.mark.slow
def test_a_slow_test_may():
    require_slow_test()
