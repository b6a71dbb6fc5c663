/* A full memory barrier for Python code that shares rings with another process. */
#ifndef FENCE_H
#define FENCE_H

/* Orders every earlier load and store before every later one (x86: mfence):
 * a store to a ring word followed by a load of the other side's word must
 * not be reordered, or both sides can decide that the other needs no wake-up. */
void full_fence(void);

#endif
