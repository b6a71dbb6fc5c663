#include "fence.h"

void full_fence(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
