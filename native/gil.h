// Releasing the GIL around native work, safely at interpreter exit.
#pragma once

#include <Python.h>
#include <unistd.h>

namespace lcl {

// Set at import: the thread that runs the interpreter's finalization.
inline unsigned long g_main_thread = 0;

// Like nb::gil_scoped_release, for every call that computes or waits. A daemon thread that comes back
// from native work while the interpreter finalizes would be ended by CPython (pthread_exit) inside a
// destructor, which aborts the process; such a thread is parked instead, as CPython parks daemon
// threads at exit anyway.
class ReleaseGil {
public:
    ReleaseGil() : state_(PyEval_SaveThread()) {}
    ~ReleaseGil() {
        if (finalizing() && PyThread_get_thread_ident() != g_main_thread) {
            for (;;) {
                pause();
            }
        }
        PyEval_RestoreThread(state_);
    }
    ReleaseGil(const ReleaseGil &) = delete;
    ReleaseGil & operator=(const ReleaseGil &) = delete;

private:
    static bool finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
        return Py_IsFinalizing() != 0;
#else
        return _Py_IsFinalizing() != 0;
#endif
    }
    PyThreadState * state_;
};

}  // namespace lcl
